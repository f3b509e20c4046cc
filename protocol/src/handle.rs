//! The handle through which one side opens streams, UDP flows and DNS queries on its peer,
//! and learns when the session ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::frame::{
    DnsFailureKind, DnsTransport, EncodeError, Frame, StreamId, MAX_DNS_MESSAGE_LEN,
};
use crate::incoming::{
    Families, FilterError, HttpFilter, IncomingKind, IncomingMode, ListenerPorts,
    SubscribeFailureKind,
};
use crate::session::state::{DnsReply, EnvReply, OpenReply, Shared, Slot};
use crate::session::{CloseReason, SessionClosed};
use crate::stream::Stream;
use crate::subscription::Subscription;
use crate::text::PeerText;
use crate::udp::UdpFlow;

/// Why a stream or flow could not be opened.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpenError {
    /// The peer tried and failed; `errno` is the Linux errno its socket call returned
    /// (e.g. 111 `ECONNREFUSED`, 110 `ETIMEDOUT`, 101 `ENETUNREACH`, 113 `EHOSTUNREACH`).
    #[error("{} (errno {errno})", std::io::Error::from_raw_os_error(*errno))]
    Failed {
        /// The Linux errno.
        errno: i32,
    },
    /// The session ended first.
    #[error(transparent)]
    SessionClosed(#[from] SessionClosed),
    /// The session has used all of its 2^31 stream ids.
    #[error("no stream ids left in this session")]
    IdsExhausted,
}

impl OpenError {
    /// The errno an application socket should report for this failure: the peer's errno, or
    /// `ECONNABORTED` (103) when the session is gone.
    pub fn errno(&self) -> i32 {
        match self {
            OpenError::Failed { errno } => *errno,
            OpenError::SessionClosed(_) | OpenError::IdsExhausted => 103,
        }
    }
}

/// Why a DNS query got no answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DnsQueryError {
    /// The peer could not answer it at all.
    #[error("DNS query failed ({kind}): {}", PeerText(message))]
    Failed {
        /// Why, as a code.
        kind: DnsFailureKind,
        /// Why, for humans.
        message: String,
    },
    /// The query is longer than a DNS message may be.
    #[error("DNS query of {len} bytes exceeds 65535")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// The session ended first.
    #[error(transparent)]
    SessionClosed(#[from] SessionClosed),
    /// The session has used all of its stream ids.
    #[error("no stream ids left in this session")]
    IdsExhausted,
}

/// Why the peer's environment could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EnvQueryError {
    /// The peer could not read it (e.g. its target has no process).
    #[error("{}", PeerText(message))]
    Failed {
        /// Why, for humans.
        message: String,
    },
    /// The session ended first.
    #[error(transparent)]
    SessionClosed(#[from] SessionClosed),
    /// The session has used all of its stream ids.
    #[error("no stream ids left in this session")]
    IdsExhausted,
}

/// Why a port could not be subscribed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscribeError {
    /// The agent refused (the port is taken, the filter does not compile, it cannot
    /// redirect traffic there, …); `message` says why in words for the user.
    #[error(
        "cannot subscribe port {port} in the target ({kind}): {}",
        PeerText(message)
    )]
    Refused {
        /// The port asked for.
        port: u16,
        /// Why, as a code.
        kind: SubscribeFailureKind,
        /// Why, for humans.
        message: String,
    },
    /// The HTTP filter breaks a rule of the protocol (see [`HttpFilter::check`]).
    #[error(transparent)]
    BadFilter(#[from] FilterError),
    /// Port 0 cannot be subscribed.
    #[error("port 0 cannot be subscribed")]
    PortZero,
    /// The subscription with its filter does not fit in one frame.
    #[error("the HTTP filter is too large to send ({0})")]
    TooLarge(#[source] EncodeError),
    /// The session ended first.
    #[error(transparent)]
    SessionClosed(#[from] SessionClosed),
    /// The session has used all of its stream ids.
    #[error("no stream ids left in this session")]
    IdsExhausted,
    /// Listener ports were given for a subscription that can't have them (a mirror, a
    /// filtered steal) or a session whose version lacks them.
    #[error("listener ports need a whole-connection steal and protocol version 4 (this session speaks {version})")]
    NoListeners {
        /// The session's version.
        version: u16,
    },
}

/// Opens things on the peer. Cheap to clone; the session shuts down (sending `GoAway`) when
/// the last clone is dropped.
#[derive(Clone)]
pub struct SessionHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    shared: Arc<Shared>,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        let message = "the session's last handle was dropped".to_string();
        self.shared.close(
            CloseReason::LocalShutdown {
                message: message.clone(),
            },
            Some(message),
        );
    }
}

/// Resets a pending open or query if its future is dropped before it completes.
struct PendingGuard {
    shared: Arc<Shared>,
    id: StreamId,
    armed: bool,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if self.armed {
            self.shared.lock().release(self.id, 0);
        }
    }
}

impl SessionHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> SessionHandle {
        SessionHandle {
            inner: Arc::new(HandleInner { shared }),
        }
    }

    fn shared(&self) -> &Arc<Shared> {
        &self.inner.shared
    }

    /// The protocol version agreed in the handshake.
    pub fn version(&self) -> u16 {
        self.shared().limits.version
    }

    /// The keys of this session's data connections ([`crate::data`]), when the agreed
    /// version has them. (Whether the peer accepts data connections depends on how it was
    /// reached: over plain TCP only.)
    pub fn data_keys(&self) -> Option<&crate::data::DataKeys> {
        self.shared().limits.data_keys.as_ref()
    }

    fn closed_error(&self) -> SessionClosed {
        SessionClosed(
            self.shared()
                .close_reason()
                .unwrap_or(CloseReason::PeerClosed),
        )
    }

    /// Connects to `addr` from the peer's side, with the peer's default connect timeout.
    /// Dropping the future cancels the connect.
    pub async fn connect_tcp(&self, addr: SocketAddr) -> Result<Stream, OpenError> {
        self.connect(addr, 0, false).await
    }

    /// Like [`SessionHandle::connect_tcp`], for a stream whose bytes will go over a data
    /// connection ([`crate::data`]): the peer moves none of them over the session, and
    /// waits (bounded) for the data connection once it has connected. Needs version 3.
    pub async fn connect_tcp_attached(&self, addr: SocketAddr) -> Result<Stream, OpenError> {
        self.connect(addr, 0, true).await
    }

    /// Like [`SessionHandle::connect_tcp`], asking the peer to give up after `timeout`
    /// (rounded to milliseconds, at least 1 ms).
    pub async fn connect_tcp_timeout(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Stream, OpenError> {
        let ms = timeout.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
        self.connect(addr, ms, false).await
    }

    async fn connect(
        &self,
        addr: SocketAddr,
        timeout_ms: u32,
        attach: bool,
    ) -> Result<Stream, OpenError> {
        let (tx, rx) = oneshot::channel();
        let guard = self.open(
            Slot::Opening {
                tcp: true,
                reply: tx,
            },
            |stream| Frame::ConnectTcp {
                stream,
                addr,
                timeout_ms,
                attach,
            },
        )?;
        let local = self.wait_open(guard.id, rx).await?;
        let mut guard = guard;
        guard.armed = false;
        Ok(Stream::new(self.shared().clone(), guard.id, local, addr))
    }

    /// Opens a UDP flow: an unconnected UDP socket on the peer's side bound to `bind` (use
    /// the unspecified address of the wanted family and port 0 for an ephemeral port, see
    /// [`crate::unspecified_like`]).
    pub async fn open_udp(&self, bind: SocketAddr) -> Result<UdpFlow, OpenError> {
        let (tx, rx) = oneshot::channel();
        let guard = self.open(
            Slot::Opening {
                tcp: false,
                reply: tx,
            },
            |stream| Frame::OpenUdp { stream, bind },
        )?;
        let local = self.wait_open(guard.id, rx).await?;
        let mut guard = guard;
        guard.armed = false;
        Ok(UdpFlow::new(self.shared().clone(), guard.id, local))
    }

    /// Sends a DNS query (wire format) to be answered as the peer's environment answers it.
    /// `transport` says how the application asked, which bounds the answer's size.
    pub async fn dns_query(
        &self,
        message: Bytes,
        transport: DnsTransport,
    ) -> Result<Bytes, DnsQueryError> {
        if message.len() > MAX_DNS_MESSAGE_LEN {
            return Err(DnsQueryError::TooLarge { len: message.len() });
        }
        let (tx, rx) = oneshot::channel();
        let mut guard = self
            .open(Slot::Querying { reply: tx }, |stream| Frame::DnsQuery {
                stream,
                transport,
                message,
            })
            .map_err(|e| match e {
                OpenError::SessionClosed(c) => DnsQueryError::SessionClosed(c),
                _ => DnsQueryError::IdsExhausted,
            })?;
        let reply = rx.await;
        guard.armed = false;
        match reply {
            Ok(DnsReply::Answer(answer)) => Ok(answer),
            Ok(DnsReply::Failed(kind, message)) => Err(DnsQueryError::Failed { kind, message }),
            Err(_) => Err(DnsQueryError::SessionClosed(self.closed_error())),
        }
    }

    /// Asks where the peer's kernel would send datagrams to `addr` from (version 2): the
    /// source address a UDP socket connected to `addr` gets there, or the errno `connect`
    /// gives (`ENETUNREACH`, ...) as [`OpenError::Failed`].
    pub async fn probe_route(&self, addr: SocketAddr) -> Result<SocketAddr, OpenError> {
        let (tx, rx) = oneshot::channel();
        let mut guard = self.open(Slot::Routing { reply: tx }, |stream| Frame::RouteQuery {
            stream,
            addr,
        })?;
        let reply = self.wait_open(guard.id, rx).await;
        guard.armed = false;
        reply
    }

    /// Asks for the peer's resolver configuration (version 2): `search`/`options` lines in
    /// resolv.conf syntax; empty when it has none (the defaults).
    pub async fn resolver_conf(&self) -> Result<String, OpenError> {
        let (tx, rx) = oneshot::channel();
        let mut guard = self.open(Slot::Resolving { reply: tx }, |stream| {
            Frame::ResolverQuery { stream }
        })?;
        let reply = rx.await;
        guard.armed = false;
        reply.map_err(|_| OpenError::SessionClosed(self.closed_error()))
    }

    /// Asks for the environment variables of the peer's target process, as `(name, value)`
    /// pairs in the order the process holds them.
    pub async fn target_env(&self) -> Result<Vec<(Bytes, Bytes)>, EnvQueryError> {
        let (tx, rx) = oneshot::channel::<EnvReply>();
        let mut guard = self
            .open(
                Slot::Environment {
                    reply: tx,
                    vars: Vec::new(),
                    bytes: 0,
                },
                |stream| Frame::EnvQuery { stream },
            )
            .map_err(|e| match e {
                OpenError::SessionClosed(c) => EnvQueryError::SessionClosed(c),
                _ => EnvQueryError::IdsExhausted,
            })?;
        let reply = rx.await;
        guard.armed = false;
        match reply {
            Ok(Ok(vars)) => Ok(vars),
            Ok(Err(message)) => Err(EnvQueryError::Failed { message }),
            Err(_) => Err(EnvQueryError::SessionClosed(self.closed_error())),
        }
    }

    fn open(
        &self,
        slot: Slot,
        frame: impl FnOnce(StreamId) -> Frame,
    ) -> Result<PendingGuard, OpenError> {
        let mut st = self.shared().lock();
        if let Some(reason) = &st.closed {
            return Err(OpenError::SessionClosed(SessionClosed(reason.clone())));
        }
        let id = st.open_local(slot).ok_or(OpenError::IdsExhausted)?;
        st.queue(&frame(id));
        Ok(PendingGuard {
            shared: self.shared().clone(),
            id,
            armed: true,
        })
    }

    async fn wait_open(
        &self,
        _id: StreamId,
        rx: oneshot::Receiver<OpenReply>,
    ) -> Result<SocketAddr, OpenError> {
        match rx.await {
            Ok(OpenReply::Opened(local)) => Ok(local),
            Ok(OpenReply::Failed(errno)) => Err(OpenError::Failed { errno }),
            Err(_) => Err(OpenError::SessionClosed(self.closed_error())),
        }
    }

    /// Subscribes `port` of the peer's target (sctrace → agent): with
    /// [`IncomingMode::Steal`], connections to it (or, with `filter`, the HTTP requests that
    /// match) come to this side instead of the target's server; with
    /// [`IncomingMode::Mirror`], copies of them do. They arrive as [`crate::Request::Incoming`]
    /// on this side's [`crate::Requests`]. The subscription lasts while the returned
    /// [`Subscription`] is held (dropping it unsubscribes) and ends with the session.
    /// Dropping the future cancels the request. Clients of both address families are
    /// taken (see [`SessionHandle::subscribe_families`]).
    pub async fn subscribe(
        &self,
        port: u16,
        mode: IncomingMode,
        filter: Option<HttpFilter>,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_families(port, mode, Families::BOTH, filter)
            .await
    }

    /// [`SessionHandle::subscribe`] for the clients of `families` only: the other family's
    /// connections stay with the target, as they would for a listener that can't take them.
    pub async fn subscribe_families(
        &self,
        port: u16,
        mode: IncomingMode,
        families: Families,
        filter: Option<HttpFilter>,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_with(port, mode, families, None, filter)
            .await
    }

    /// A whole-connection steal of `port` for the clients of `families`, those of each
    /// family in `listeners` redirected to that port of the target (a listener this side
    /// put there), the others to the agent's own listeners as usual. Version 4.
    pub async fn steal_to_listeners(
        &self,
        port: u16,
        families: Families,
        listeners: ListenerPorts,
    ) -> Result<Subscription, SubscribeError> {
        self.subscribe_with(port, IncomingMode::Steal, families, Some(listeners), None)
            .await
    }

    async fn subscribe_with(
        &self,
        port: u16,
        mode: IncomingMode,
        families: Families,
        listeners: Option<ListenerPorts>,
        filter: Option<HttpFilter>,
    ) -> Result<Subscription, SubscribeError> {
        if port == 0 {
            return Err(SubscribeError::PortZero);
        }
        let version = self.version();
        if listeners.is_some()
            && (version < crate::session::LISTENERS_VERSION
                || mode != IncomingMode::Steal
                || filter.is_some())
        {
            return Err(SubscribeError::NoListeners { version });
        }
        if let Some(f) = &filter {
            f.check()?;
        }
        let frame = |stream| Frame::Subscribe {
            stream,
            port,
            mode,
            families,
            listeners,
            filter: filter.clone(),
        };
        // Checked here so that the frame queued below cannot fail to encode.
        frame(1)
            .encode(&mut BytesMut::new())
            .map_err(SubscribeError::TooLarge)?;
        let (tx, rx) = oneshot::channel();
        let mut guard = self
            .open(Slot::Subscribing { reply: tx }, frame)
            .map_err(|e| match e {
                OpenError::SessionClosed(c) => SubscribeError::SessionClosed(c),
                _ => SubscribeError::IdsExhausted,
            })?;
        let reply = rx.await;
        match reply {
            Ok(Ok(())) => {
                guard.armed = false;
                Ok(Subscription::new(
                    self.shared().clone(),
                    guard.id,
                    port,
                    mode,
                ))
            }
            Ok(Err((kind, message))) => {
                guard.armed = false;
                Err(SubscribeError::Refused {
                    port,
                    kind,
                    message,
                })
            }
            Err(_) => {
                guard.armed = false;
                Err(SubscribeError::SessionClosed(self.closed_error()))
            }
        }
    }

    /// Hands the peer (sctrace) an incoming connection of `subscription`, a subscription the
    /// peer made on this side (the agent): `client` is the remote client, `server` the
    /// address it connected to. Resolves once the peer takes it (the stream carries the
    /// connection; its `local_addr` is `server`, its `peer_addr` `client`) or declines it
    /// ([`OpenError::Failed`], e.g. `ECONNREFUSED` once the peer has unsubscribed). A
    /// subscription that has already ended fails at once with `ECONNREFUSED`.
    pub async fn open_incoming(
        &self,
        subscription: StreamId,
        kind: IncomingKind,
        client: SocketAddr,
        server: SocketAddr,
    ) -> Result<Stream, OpenError> {
        let (tx, rx) = oneshot::channel();
        let guard = {
            let live = {
                let st = self.shared().lock();
                // Only subscriptions the peer made on this side may be named.
                !st.is_local_id(subscription) && st.subscription_live(subscription)
            };
            if !live {
                if let Some(reason) = self.shared().close_reason() {
                    return Err(OpenError::SessionClosed(SessionClosed(reason)));
                }
                return Err(OpenError::Failed {
                    errno: crate::session::state::errno::ECONNREFUSED,
                });
            }
            self.open(
                Slot::Opening {
                    tcp: true,
                    reply: tx,
                },
                |stream| Frame::IncomingTcp {
                    stream,
                    subscription,
                    kind,
                    client,
                    server,
                },
            )?
        };
        self.wait_open(guard.id, rx).await?;
        let mut guard = guard;
        guard.armed = false;
        Ok(Stream::new(self.shared().clone(), guard.id, server, client))
    }

    /// Resolves when the session ends, with the reason.
    pub async fn closed(&self) -> CloseReason {
        let mut rx = self.shared().closed_rx();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        reason.unwrap_or(CloseReason::PeerClosed)
    }

    /// The reason the session ended, if it has.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared().close_reason()
    }

    /// Closes the session: sends `GoAway` with `message` to the peer (after the data already
    /// queued) and fails every stream and flow.
    pub fn shutdown(&self, message: &str) {
        self.shared().close(
            CloseReason::LocalShutdown {
                message: message.to_string(),
            },
            Some(message.to_string()),
        );
    }
}
