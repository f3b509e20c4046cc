//! Port subscriptions and their connections: the peer's `Subscribe` becomes a request for
//! our user; `Subscribed` and `SubscribeFailed` answer the one we sent; `IncomingTcp` hands
//! us a connection of a subscription we made.

use std::net::SocketAddr;
use std::sync::Arc;

use super::violation;
use crate::frame::{Frame, StreamId};
use crate::incoming::{
    Families, HttpFilter, IncomingKind, IncomingMode, ListenerPorts, SubscribeFailureKind,
};
use crate::request::{OfferKind, Request};
use crate::session::state::{errno, Shared, Slot, State, SubscriptionState};
use crate::session::CloseReason;

impl State {
    /// `Subscribe`: the peer asks us to subscribe `port` of our target.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_subscribe(
        &mut self,
        shared: &Arc<Shared>,
        stream: StreamId,
        port: u16,
        mode: IncomingMode,
        families: Families,
        listeners: Option<ListenerPorts>,
        filter: Option<HttpFilter>,
    ) -> Result<Option<Request>, CloseReason> {
        let cancel = self.offer(stream, OfferKind::Subscribe)?;
        Ok(cancel.map(|cancel| {
            Request::subscribe(
                shared.clone(),
                stream,
                port,
                mode,
                families,
                listeners,
                filter,
                cancel,
            )
        }))
    }

    /// `Subscribed`: a subscription we asked for is in place.
    pub(super) fn on_subscribed(&mut self, stream: StreamId) -> Result<(), CloseReason> {
        match self.slots.remove(&stream) {
            Some(Slot::Subscribing { reply }) => {
                self.slots.insert(
                    stream,
                    Slot::Subscription(SubscriptionState {
                        ended: None,
                        waker: None,
                    }),
                );
                // If the subscriber is gone its guard releases the subscription.
                let _ = reply.send(Ok(()));
                Ok(())
            }
            other => self.unexpected(stream, other, "Subscribed"),
        }
    }

    /// `SubscribeFailed`: a subscription we asked for was refused, and why.
    pub(super) fn on_subscribe_failed(
        &mut self,
        stream: StreamId,
        kind: SubscribeFailureKind,
        message: String,
    ) -> Result<(), CloseReason> {
        match self.slots.remove(&stream) {
            Some(Slot::Subscribing { reply }) => {
                let _ = reply.send(Err((kind, message)));
                Ok(())
            }
            other => self.unexpected(stream, other, "SubscribeFailed"),
        }
    }

    /// `IncomingTcp`: a connection of our subscription `subscription`, from `client` to the
    /// target's `server`. Refused (`ECONNREFUSED`) if we have ended that subscription.
    pub(super) fn on_incoming_tcp(
        &mut self,
        shared: &Arc<Shared>,
        stream: StreamId,
        subscription: StreamId,
        kind: IncomingKind,
        client: SocketAddr,
        server: SocketAddr,
    ) -> Result<Option<Request>, CloseReason> {
        if !self.is_local_id(subscription) || !self.existed(subscription) {
            return Err(violation(format!(
                "IncomingTcp for subscription {subscription}, which we never made"
            )));
        }
        match self.slots.get(&subscription) {
            Some(Slot::Subscription(sub)) if sub.ended.is_none() => {
                let cancel = self.offer(stream, OfferKind::Open)?;
                Ok(cancel.map(|cancel| {
                    Request::incoming(
                        shared.clone(),
                        stream,
                        subscription,
                        kind,
                        client,
                        server,
                        cancel,
                    )
                }))
            }
            Some(Slot::Subscription(_)) | None => {
                // Unsubscribed while the connection was on its way: refused, and the agent
                // gives it to the target's own server.
                self.accept_peer_id(stream)?;
                self.queue(&Frame::OpenFailed {
                    stream,
                    errno: errno::ECONNREFUSED,
                });
                Ok(None)
            }
            Some(_) => Err(violation(format!(
                "IncomingTcp for stream {subscription}, which is not a subscription in place"
            ))),
        }
    }
}
