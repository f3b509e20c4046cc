//! What the peer asks this side to do — connect, open a UDP flow, resolve a name, subscribe a
//! port, take an incoming connection — and the responders that answer it. A request dropped
//! without an answer is refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::frame::{
    DnsFailureKind, DnsTransport, Frame, StreamId, MAX_DNS_MESSAGE_LEN, MAX_ENV_BYTES,
    MAX_ENV_ENTRY_LEN, MAX_PAYLOAD_LEN,
};
use crate::incoming::SubscribeFailureKind;
use crate::session::state::{errno, Shared, Slot, StreamState, UdpState};
use crate::session::CloseReason;
use crate::stream::Stream;
use crate::subscription::{IncomingRequest, SubscribeRequest};
use crate::udp::UdpFlow;

/// The requests the peer sends, in arrival order. Ends (`None`) when the session ends.
pub struct Requests {
    rx: mpsc::Receiver<Request>,
}

impl Requests {
    pub(crate) fn new(rx: mpsc::Receiver<Request>) -> Requests {
        Requests { rx }
    }

    /// The next request, or `None` once the session has ended.
    pub async fn next(&mut self) -> Option<Request> {
        self.rx.recv().await
    }

    /// Poll form of [`Requests::next`].
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Request>> {
        self.rx.poll_recv(cx)
    }
}

/// One request from the peer. New kinds may be added in later protocol versions.
#[non_exhaustive]
pub enum Request {
    /// Connect a TCP socket to an address.
    ConnectTcp(ConnectTcpRequest),
    /// Open an unconnected UDP socket.
    OpenUdp(OpenUdpRequest),
    /// Answer a DNS query.
    Dns(DnsRequest),
    /// Tell the target process's environment.
    Env(EnvRequest),
    /// Subscribe a port of the target (sctrace → agent).
    Subscribe(SubscribeRequest),
    /// Take an incoming connection of a subscription this side made (agent → sctrace).
    Incoming(IncomingRequest),
    /// Tell where datagrams to an address would be routed from (version 2).
    Route(RouteRequest),
    /// Tell the target's resolver configuration (version 2).
    Resolver(ResolverRequest),
}

/// Why a response could not be delivered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RespondError {
    /// The peer cancelled the request (it gave up waiting, or closed the socket).
    #[error("the peer cancelled the request")]
    Cancelled,
    /// The session ended.
    #[error("the session ended: {0}")]
    SessionClosed(CloseReason),
    /// The DNS answer is longer than a DNS message may be.
    #[error("DNS answer of {len} bytes exceeds 65535")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The environment breaks a limit or rule of `EnvVars` (see [`EnvRequest::answer`]).
    #[error("the environment cannot be sent: {0}")]
    BadEnvironment(String),
}

impl Request {
    pub(crate) fn connect_tcp(
        shared: Arc<Shared>,
        id: StreamId,
        addr: SocketAddr,
        timeout_ms: u32,
        attach: bool,
        cancel: oneshot::Receiver<()>,
    ) -> Request {
        Request::ConnectTcp(ConnectTcpRequest {
            offer: Offer::new(shared, id, cancel, OfferKind::Open),
            addr,
            timeout: (timeout_ms != 0).then(|| Duration::from_millis(u64::from(timeout_ms))),
            attach,
        })
    }

    pub(crate) fn open_udp(
        shared: Arc<Shared>,
        id: StreamId,
        bind: SocketAddr,
        cancel: oneshot::Receiver<()>,
    ) -> Request {
        Request::OpenUdp(OpenUdpRequest {
            offer: Offer::new(shared, id, cancel, OfferKind::Open),
            bind,
        })
    }

    pub(crate) fn dns(
        shared: Arc<Shared>,
        id: StreamId,
        transport: DnsTransport,
        message: Bytes,
        cancel: oneshot::Receiver<()>,
    ) -> Request {
        Request::Dns(DnsRequest {
            offer: Offer::new(shared, id, cancel, OfferKind::Dns),
            transport,
            message,
        })
    }

    pub(crate) fn env(shared: Arc<Shared>, id: StreamId, cancel: oneshot::Receiver<()>) -> Request {
        Request::Env(EnvRequest {
            offer: Offer::new(shared, id, cancel, OfferKind::Env),
        })
    }

    pub(crate) fn route(
        shared: Arc<Shared>,
        id: StreamId,
        addr: SocketAddr,
        cancel: oneshot::Receiver<()>,
    ) -> Request {
        Request::Route(RouteRequest {
            offer: Offer::new(shared, id, cancel, OfferKind::Open),
            addr,
        })
    }

    pub(crate) fn resolver(
        shared: Arc<Shared>,
        id: StreamId,
        cancel: oneshot::Receiver<()>,
    ) -> Request {
        Request::Resolver(ResolverRequest {
            offer: Offer::new(shared, id, cancel, OfferKind::Resolver),
        })
    }

    fn offer(&mut self) -> &mut Offer {
        match self {
            Request::Route(r) => &mut r.offer,
            Request::Resolver(r) => &mut r.offer,
            Request::ConnectTcp(r) => &mut r.offer,
            Request::OpenUdp(r) => &mut r.offer,
            Request::Dns(r) => &mut r.offer,
            Request::Env(r) => &mut r.offer,
            Request::Subscribe(r) => r.offer(),
            Request::Incoming(r) => r.offer(),
        }
    }

    /// Too many requests are waiting for our user: refuse this one at once.
    pub(crate) fn refuse_overloaded(mut self) {
        self.offer()
            .refuse(errno::EAGAIN, "too many pending requests");
    }

    /// Nobody serves requests on this side.
    pub(crate) fn refuse_unserved(mut self) {
        self.offer()
            .refuse(errno::EOPNOTSUPP, "requests are not served here");
    }
}

/// Which frame refuses a request.
#[derive(Clone, Copy)]
pub(crate) enum OfferKind {
    /// `OpenFailed` with an errno.
    Open,
    /// `DnsFailed`.
    Dns,
    /// `EnvFailed`.
    Env,
    /// `SubscribeFailed`.
    Subscribe,
    /// `ResolverConf` with nothing (the defaults).
    Resolver,
}

impl OfferKind {
    /// The frame that refuses request `stream` of this kind: `errno` for an open; `why` for
    /// the others (a subscription refused with `EAGAIN` may be retried, `Failed`; any other
    /// errno means it is not served, `Unsupported`).
    pub(crate) fn refusal(self, stream: StreamId, errno: i32, why: &str) -> Frame {
        match self {
            OfferKind::Subscribe => Frame::SubscribeFailed {
                stream,
                kind: if errno == errno::EAGAIN {
                    SubscribeFailureKind::Failed
                } else {
                    SubscribeFailureKind::Unsupported
                },
                message: why.to_string(),
            },
            OfferKind::Dns => Frame::DnsFailed {
                stream,
                kind: DnsFailureKind::Unavailable,
                message: why.to_string(),
            },
            OfferKind::Env => Frame::EnvFailed {
                stream,
                message: why.to_string(),
            },
            OfferKind::Open => Frame::OpenFailed { stream, errno },
            OfferKind::Resolver => Frame::ResolverConf {
                stream,
                text: String::new(),
            },
        }
    }
}

/// The part every request shares: which stream it is, and the peer's cancellation.
pub(crate) struct Offer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: StreamId,
    cancel: oneshot::Receiver<()>,
    kind: OfferKind,
    answered: bool,
}

impl Offer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: StreamId,
        cancel: oneshot::Receiver<()>,
        kind: OfferKind,
    ) -> Offer {
        Offer {
            shared,
            id,
            cancel,
            kind,
            answered: false,
        }
    }

    /// Replaces the still-offered slot by `slot` and queues `reply`.
    pub(crate) fn answer(&mut self, slot: Option<Slot>, reply: Frame) -> Result<(), RespondError> {
        self.answer_all(slot, std::slice::from_ref(&reply))
    }

    /// Like [`Offer::answer`], queueing several frames at once (in order, under one lock).
    fn answer_all(&mut self, slot: Option<Slot>, replies: &[Frame]) -> Result<(), RespondError> {
        self.answered = true;
        let mut st = self.shared.lock();
        if let Some(reason) = &st.closed {
            return Err(RespondError::SessionClosed(reason.clone()));
        }
        match st.slot_mut(self.id) {
            Some(current @ Slot::Offered { .. }) => match slot {
                Some(slot) => *current = slot,
                None => {
                    st.remove(self.id);
                }
            },
            _ => return Err(RespondError::Cancelled),
        }
        for reply in replies {
            st.queue(reply);
        }
        Ok(())
    }

    /// Refuses the request with `kind`'s failure frame (see [`OfferKind::refusal`]).
    pub(crate) fn refuse(&mut self, errno: i32, why: &str) {
        let reply = self.kind.refusal(self.id, errno, why);
        let _ = self.answer(None, reply);
    }

    /// Accepts an open (a connect, or an incoming connection): the slot becomes a stream
    /// between `local` and `peer`, and the peer is told `Opened`.
    pub(crate) fn accept_stream(
        &mut self,
        local: SocketAddr,
        peer: SocketAddr,
    ) -> Result<Stream, RespondError> {
        let shared = self.shared.clone();
        let state = StreamState::new(&shared.limits);
        let id = self.id;
        self.answer(
            Some(Slot::Stream(state)),
            Frame::Opened { stream: id, local },
        )?;
        Ok(Stream::new(shared, id, local, peer))
    }

    /// Rejects an open with a Linux errno (`OpenFailed`).
    pub(crate) fn reject_open(&mut self, errno: i32) {
        let id = self.id;
        let _ = self.answer(None, Frame::OpenFailed { stream: id, errno });
    }

    pub(crate) async fn cancelled(&mut self) {
        // Resolves when the slot's sender is dropped: the peer reset the request or the
        // session ended.
        let _ = (&mut self.cancel).await;
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        if !self.answered {
            self.refuse(errno::EOPNOTSUPP, "the request was not served");
        }
    }
}

/// The peer asks for a TCP connection.
pub struct ConnectTcpRequest {
    offer: Offer,
    addr: SocketAddr,
    timeout: Option<Duration>,
    attach: bool,
}

impl ConnectTcpRequest {
    /// Whether the peer will send the connection's bytes over a data connection
    /// ([`crate::data`]) rather than the stream.
    pub fn attach(&self) -> bool {
        self.attach
    }

    /// Where to connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The peer's connect timeout, if it asked for one (else use the local default).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The stream id (for logs).
    pub fn id(&self) -> StreamId {
        self.offer.id
    }

    /// Resolves when the peer gives up on this request (or the session ends): stop
    /// connecting.
    pub async fn cancelled(&mut self) {
        self.offer.cancelled().await
    }

    /// The connection is established; `local` is the socket's local address. Returns the
    /// stream that carries the connection's bytes.
    pub fn accept(mut self, local: SocketAddr) -> Result<Stream, RespondError> {
        self.offer.accept_stream(local, self.addr)
    }

    /// The connection failed with this Linux errno (e.g. 111 `ECONNREFUSED`).
    pub fn reject(mut self, errno: i32) {
        self.offer.reject_open(errno);
    }
}

/// The peer asks for a UDP flow.
pub struct OpenUdpRequest {
    offer: Offer,
    bind: SocketAddr,
}

impl OpenUdpRequest {
    /// The local address to bind (port 0: ephemeral).
    pub fn bind(&self) -> SocketAddr {
        self.bind
    }

    /// The flow id (for logs).
    pub fn id(&self) -> StreamId {
        self.offer.id
    }

    /// The socket is open and bound to `local`. Returns the flow that carries its datagrams.
    pub fn accept(mut self, local: SocketAddr) -> Result<UdpFlow, RespondError> {
        let shared = self.offer.shared.clone();
        let id = self.offer.id;
        self.offer.answer(
            Some(Slot::Udp(UdpState::new())),
            Frame::Opened { stream: id, local },
        )?;
        Ok(UdpFlow::new(shared, id, local))
    }

    /// The socket could not be opened; this Linux errno says why.
    pub fn reject(mut self, errno: i32) {
        self.offer.reject_open(errno);
    }
}

/// The peer asks for a DNS query to be answered.
pub struct DnsRequest {
    offer: Offer,
    transport: DnsTransport,
    message: Bytes,
}

impl DnsRequest {
    /// The query in DNS wire format.
    pub fn message(&self) -> &Bytes {
        &self.message
    }

    /// How the application sent it.
    pub fn transport(&self) -> DnsTransport {
        self.transport
    }

    /// The exchange id (for logs).
    pub fn id(&self) -> StreamId {
        self.offer.id
    }

    /// Resolves when the peer gives up on this query (or the session ends).
    pub async fn cancelled(&mut self) {
        self.offer.cancelled().await
    }

    /// Sends the DNS response (wire format, at most 65,535 bytes).
    pub fn answer(mut self, message: Bytes) -> Result<(), RespondError> {
        if message.len() > MAX_DNS_MESSAGE_LEN {
            let len = message.len();
            self.offer.refuse(0, "the answer is too large");
            return Err(RespondError::TooLarge { len });
        }
        let id = self.offer.id;
        self.offer.answer(
            None,
            Frame::DnsAnswer {
                stream: id,
                message,
            },
        )
    }

    /// No answer can be given.
    pub fn fail(mut self, kind: DnsFailureKind, message: &str) {
        let id = self.offer.id;
        let _ = self.offer.answer(
            None,
            Frame::DnsFailed {
                stream: id,
                kind,
                message: message.to_string(),
            },
        );
    }
}

/// The peer asks for the environment variables of this side's target process.
pub struct EnvRequest {
    offer: Offer,
}

impl EnvRequest {
    /// The exchange id (for logs).
    pub fn id(&self) -> StreamId {
        self.offer.id
    }

    /// Sends the variables as `(name, value)` pairs, split over as many `EnvVars` frames as
    /// they need. Names must be non-empty without `=` or NUL, values without NUL, each pair at
    /// most [`MAX_ENV_ENTRY_LEN`] bytes and all together at most [`MAX_ENV_BYTES`]; otherwise
    /// nothing is sent but an `EnvFailed` saying why, and the error is returned.
    pub fn answer(mut self, vars: Vec<(Bytes, Bytes)>) -> Result<(), RespondError> {
        if let Err(why) = check_env(&vars) {
            self.offer.refuse(0, &why);
            return Err(RespondError::BadEnvironment(why));
        }
        let id = self.offer.id;
        let mut frames = Vec::new();
        let mut chunk = Vec::new();
        let mut chunk_len = 0;
        for (name, value) in vars {
            let len = 8 + name.len() + value.len();
            if chunk_len + len > MAX_PAYLOAD_LEN {
                frames.push(Frame::EnvVars {
                    stream: id,
                    vars: std::mem::take(&mut chunk),
                    more: true,
                });
                chunk_len = 0;
            }
            chunk_len += len;
            chunk.push((name, value));
        }
        frames.push(Frame::EnvVars {
            stream: id,
            vars: chunk,
            more: false,
        });
        self.offer.answer_all(None, &frames)
    }

    /// The environment cannot be read; `message` says why.
    pub fn fail(mut self, message: &str) {
        let id = self.offer.id;
        let _ = self.offer.answer(
            None,
            Frame::EnvFailed {
                stream: id,
                message: message.to_string(),
            },
        );
    }
}

/// Checks the rules of `EnvVars` before anything is sent.
fn check_env(vars: &[(Bytes, Bytes)]) -> Result<(), String> {
    let mut total = 0;
    for (name, value) in vars {
        let shown = String::from_utf8_lossy(name);
        if name.is_empty() || name.contains(&b'=') || name.contains(&0) {
            return Err(format!(
                "the variable name {shown:?} is empty or contains '=' or NUL"
            ));
        }
        if value.contains(&0) {
            return Err(format!("the value of {shown} contains NUL"));
        }
        let len = name.len() + value.len();
        if len + 8 > MAX_PAYLOAD_LEN {
            return Err(format!(
                "{shown} is {len} bytes long, above the limit of {MAX_ENV_ENTRY_LEN} per variable"
            ));
        }
        total += len;
    }
    if total > MAX_ENV_BYTES {
        return Err(format!(
            "the environment is {total} bytes long, above the limit of {MAX_ENV_BYTES}"
        ));
    }
    Ok(())
}

/// The peer asks where this side's kernel would send datagrams to an address from (the
/// source a UDP socket connected there gets).
pub struct RouteRequest {
    offer: Offer,
    addr: SocketAddr,
}

impl RouteRequest {
    /// The destination.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The route's source: the address a socket connected to [`RouteRequest::addr`] has.
    pub fn answer(mut self, local: SocketAddr) -> Result<(), RespondError> {
        let id = self.offer.id;
        self.offer.answer(None, Frame::Opened { stream: id, local })
    }

    /// There is no route; this Linux errno says why (what `connect` said).
    pub fn reject(mut self, errno: i32) {
        self.offer.reject_open(errno);
    }
}

/// The peer asks for this side's resolver configuration.
pub struct ResolverRequest {
    offer: Offer,
}

impl ResolverRequest {
    /// Sends `search …`/`options …` lines (resolv.conf syntax), at most
    /// [`crate::frame::MAX_MESSAGE_LEN`] bytes (longer text is cut at a line boundary).
    pub fn answer(mut self, text: &str) -> Result<(), RespondError> {
        let id = self.offer.id;
        self.offer.answer(
            None,
            Frame::ResolverConf {
                stream: id,
                text: cut_at_line(text, crate::frame::MAX_MESSAGE_LEN).to_string(),
            },
        )
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends at a line end.
fn cut_at_line(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    match text[..max].rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    }
}
