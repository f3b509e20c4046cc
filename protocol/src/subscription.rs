//! Subscriptions to a target's port and the incoming connections they bring: the
//! [`Subscription`] both sides hold while it lasts, the agent's [`SubscribeRequest`], and the
//! tracer's [`IncomingRequest`] for each connection the agent hands over.
//!
//! ```text
//!  sctrace                                   agent
//!  handle.subscribe(80, Steal, None) ──Subscribe──►  Request::Subscribe(r)
//!                                   ◄─Subscribed──   r.accept() → Subscription
//!  Request::Incoming(r)            ◄─IncomingTcp──   handle.open_incoming(..)
//!  r.accept(local) → Stream        ───Opened─────►   Stream
//!  drop(subscription)              ───Reset──────►   subscription.ended() → Ended { errno: 0 }
//! ```

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::frame::{Frame, StreamId};
use crate::incoming::{
    Families, HttpFilter, IncomingKind, IncomingMode, ListenerPorts, SubscribeFailureKind,
};
use crate::request::{Offer, OfferKind, Request, RespondError};
use crate::session::state::{register, Shared, Slot, SubscriptionState};
use crate::session::CloseReason;
use crate::stream::Stream;

/// A port subscription in place, on either side. It lasts until one side ends it — dropping
/// it (or [`Subscription::end`]) tells the peer — or the session ends.
pub struct Subscription {
    shared: Arc<Shared>,
    id: StreamId,
    port: u16,
    mode: IncomingMode,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("port", &self.port)
            .field("mode", &self.mode)
            .finish()
    }
}

/// How a subscription ended.
#[derive(Debug, Clone)]
pub enum SubscriptionEnd {
    /// The peer ended it: sctrace unsubscribed (errno 0), or the agent could no longer keep
    /// it (a Linux errno saying why; the agent logs the details).
    Ended {
        /// 0 for a plain end, else a Linux errno.
        errno: i32,
    },
    /// The session ended.
    SessionClosed(CloseReason),
}

impl Subscription {
    pub(crate) fn new(
        shared: Arc<Shared>,
        id: StreamId,
        port: u16,
        mode: IncomingMode,
    ) -> Subscription {
        Subscription {
            shared,
            id,
            port,
            mode,
        }
    }

    /// The subscription's id: incoming connections name it ([`IncomingRequest::subscription`]).
    pub fn id(&self) -> StreamId {
        self.id
    }

    /// The target's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Mirror or steal.
    pub fn mode(&self) -> IncomingMode {
        self.mode
    }

    /// Resolves once the peer ends the subscription or the session ends.
    pub fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<SubscriptionEnd> {
        let mut st = self.shared.lock();
        if let Some(reason) = &st.closed {
            return Poll::Ready(SubscriptionEnd::SessionClosed(reason.clone()));
        }
        match st.slot_mut(self.id) {
            Some(Slot::Subscription(sub)) => match sub.ended {
                Some(errno) => Poll::Ready(SubscriptionEnd::Ended { errno }),
                None => {
                    register(&mut sub.waker, cx.waker());
                    Poll::Pending
                }
            },
            // Only this handle removes the slot, so this is not reached; treat it as ended.
            _ => Poll::Ready(SubscriptionEnd::Ended { errno: 0 }),
        }
    }

    /// Async form of [`Subscription::poll_ended`].
    pub async fn ended(&mut self) -> SubscriptionEnd {
        poll_fn(|cx| self.poll_ended(cx)).await
    }

    /// Ends the subscription, telling the peer `errno` (0 for a plain end, as dropping does).
    pub fn end(self, errno: i32) {
        self.shared.lock().release(self.id, errno);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // A no-op after `end`, which already removed the slot.
        self.shared.lock().release(self.id, 0);
    }
}

impl Request {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn subscribe(
        shared: Arc<Shared>,
        id: StreamId,
        port: u16,
        mode: IncomingMode,
        families: Families,
        listeners: Option<ListenerPorts>,
        filter: Option<HttpFilter>,
        cancel: oneshot::Receiver<()>,
    ) -> Request {
        Request::Subscribe(SubscribeRequest {
            offer: Offer::new(shared, id, cancel, OfferKind::Subscribe),
            port,
            mode,
            families,
            listeners,
            filter,
        })
    }

    pub(crate) fn incoming(
        shared: Arc<Shared>,
        id: StreamId,
        subscription: StreamId,
        kind: IncomingKind,
        client: SocketAddr,
        server: SocketAddr,
        cancel: oneshot::Receiver<()>,
    ) -> Request {
        Request::Incoming(IncomingRequest {
            offer: Offer::new(shared, id, cancel, OfferKind::Open),
            subscription,
            kind,
            client,
            server,
        })
    }
}

/// The peer (sctrace) asks this side (the agent) to subscribe a port of its target.
pub struct SubscribeRequest {
    offer: Offer,
    port: u16,
    mode: IncomingMode,
    families: Families,
    listeners: Option<ListenerPorts>,
    filter: Option<HttpFilter>,
}

impl SubscribeRequest {
    pub(crate) fn offer(&mut self) -> &mut Offer {
        &mut self.offer
    }

    /// The subscription's id (for logs, and to name it in `open_incoming`).
    pub fn id(&self) -> StreamId {
        self.offer.id
    }

    /// The target's port (never 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Mirror or steal.
    pub fn mode(&self) -> IncomingMode {
        self.mode
    }

    /// Whose clients to take: the other family's connections stay with the target.
    pub fn families(&self) -> Families {
        self.families
    }

    /// Version 4: the ports of the subscriber's own listeners in the target, which this
    /// family's clients are redirected to instead of the agent's.
    pub fn listeners(&self) -> Option<ListenerPorts> {
        self.listeners
    }

    /// With steal: the requests to take (the others go to the target's server).
    pub fn filter(&self) -> Option<&HttpFilter> {
        self.filter.as_ref()
    }

    /// Resolves when the peer gives up on this request (or the session ends).
    pub async fn cancelled(&mut self) {
        self.offer.cancelled().await
    }

    /// The subscription is in place. Returns it: hold it for as long as it lasts, and watch
    /// [`Subscription::ended`] for the peer's unsubscribe.
    pub fn accept(mut self) -> Result<Subscription, RespondError> {
        let id = self.offer.id;
        self.offer.answer(
            Some(Slot::Subscription(SubscriptionState {
                ended: None,
                waker: None,
            })),
            Frame::Subscribed { stream: id },
        )?;
        Ok(Subscription::new(
            self.offer.shared.clone(),
            id,
            self.port,
            self.mode,
        ))
    }

    /// The subscription is refused; `message` tells the user why (e.g. which session already
    /// steals the port).
    pub fn reject(mut self, kind: SubscribeFailureKind, message: &str) {
        let id = self.offer.id;
        let _ = self.offer.answer(
            None,
            Frame::SubscribeFailed {
                stream: id,
                kind,
                message: message.to_string(),
            },
        );
    }
}

/// The peer (the agent) hands this side (sctrace) an incoming connection of one of its
/// subscriptions: accept it to get the stream, or reject it (the agent then lets the
/// target's own server answer the client).
pub struct IncomingRequest {
    offer: Offer,
    subscription: StreamId,
    kind: IncomingKind,
    client: SocketAddr,
    server: SocketAddr,
}

impl IncomingRequest {
    pub(crate) fn offer(&mut self) -> &mut Offer {
        &mut self.offer
    }

    /// The stream id (for logs).
    pub fn id(&self) -> StreamId {
        self.offer.id
    }

    /// The subscription ([`Subscription::id`]) this connection arrived on.
    pub fn subscription(&self) -> StreamId {
        self.subscription
    }

    /// What the stream carries: a whole stolen connection, a mirrored copy, or one HTTP
    /// request.
    pub fn kind(&self) -> IncomingKind {
        self.kind
    }

    /// The remote client, as the target saw it: what `accept()`/`getpeername()` should show.
    pub fn client(&self) -> SocketAddr {
        self.client
    }

    /// The address the client connected to in the target (its address and the subscribed
    /// port): what `getsockname()` on the accepted socket would show there.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The target's port (`server().port()`).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// Resolves when the agent gives up on this connection (or the session ends).
    pub async fn cancelled(&mut self) {
        self.offer.cancelled().await
    }

    /// Takes the connection; `local` is the address it is delivered to (the app's listener),
    /// for the agent's logs. Returns the stream: its reads are the client's bytes.
    pub fn accept(mut self, local: SocketAddr) -> Result<Stream, RespondError> {
        self.offer.accept_stream(local, self.client)
    }

    /// Declines the connection with a Linux errno (e.g. 111 `ECONNREFUSED` when the app no
    /// longer listens); the agent gives it to the target's own server instead.
    pub fn reject(mut self, errno: i32) {
        self.offer.reject_open(errno);
    }
}
