//! One-shot questions about the target (version 2): the peer's `RouteQuery` and
//! `ResolverQuery` become requests for our user; `ResolverConf` answers the resolver query
//! we sent (a route query we sent is answered by `Opened`/`OpenFailed`, see `open`).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::frame::StreamId;
use crate::request::{OfferKind, Request};
use crate::session::state::{Shared, Slot, State};
use crate::session::CloseReason;

impl State {
    /// `RouteQuery`: the peer asks where our kernel would send datagrams to `addr` from.
    pub(super) fn on_route_query(
        &mut self,
        shared: &Arc<Shared>,
        stream: StreamId,
        addr: SocketAddr,
    ) -> Result<Option<Request>, CloseReason> {
        let cancel = self.offer(stream, OfferKind::Open)?;
        Ok(cancel.map(|cancel| Request::route(shared.clone(), stream, addr, cancel)))
    }

    /// `ResolverQuery`: the peer asks for our target's resolver configuration.
    pub(super) fn on_resolver_query(
        &mut self,
        shared: &Arc<Shared>,
        stream: StreamId,
    ) -> Result<Option<Request>, CloseReason> {
        let cancel = self.offer(stream, OfferKind::Resolver)?;
        Ok(cancel.map(|cancel| Request::resolver(shared.clone(), stream, cancel)))
    }

    /// `ResolverConf`: the answer to a resolver query we sent.
    pub(super) fn on_resolver_conf(
        &mut self,
        stream: StreamId,
        text: String,
    ) -> Result<(), CloseReason> {
        match self.slots.remove(&stream) {
            Some(Slot::Resolving { reply }) => {
                let _ = reply.send(text);
                Ok(())
            }
            other => self.unexpected(stream, other, "ResolverConf"),
        }
    }
}
