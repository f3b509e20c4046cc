//! Opening TCP streams and UDP flows: the peer's `ConnectTcp` and `OpenUdp` become requests
//! for our user; `Opened` and `OpenFailed` answer the opens we asked for (and the incoming
//! connections we handed over, and the route queries we sent).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::frame::StreamId;
use crate::request::{OfferKind, Request};
use crate::session::state::{OpenReply, Shared, Slot, State, StreamState, UdpState};
use crate::session::CloseReason;

impl State {
    /// `ConnectTcp`: the peer asks us to connect a TCP socket.
    pub(super) fn on_connect_tcp(
        &mut self,
        shared: &Arc<Shared>,
        stream: StreamId,
        addr: SocketAddr,
        timeout_ms: u32,
        attach: bool,
    ) -> Result<Option<Request>, CloseReason> {
        let cancel = self.offer(stream, OfferKind::Open)?;
        Ok(cancel.map(|cancel| {
            Request::connect_tcp(shared.clone(), stream, addr, timeout_ms, attach, cancel)
        }))
    }

    /// `OpenUdp`: the peer asks us to open a UDP socket bound to `bind`.
    pub(super) fn on_open_udp(
        &mut self,
        shared: &Arc<Shared>,
        stream: StreamId,
        bind: SocketAddr,
    ) -> Result<Option<Request>, CloseReason> {
        let cancel = self.offer(stream, OfferKind::Open)?;
        Ok(cancel.map(|cancel| Request::open_udp(shared.clone(), stream, bind, cancel)))
    }

    /// `Opened`: an open we asked for succeeded; its slot becomes a stream or a flow.
    pub(super) fn on_opened(
        &mut self,
        stream: StreamId,
        local: SocketAddr,
    ) -> Result<(), CloseReason> {
        match self.slots.remove(&stream) {
            Some(Slot::Opening { tcp, reply }) => {
                let slot = if tcp {
                    Slot::Stream(StreamState::new(&self.limits))
                } else {
                    Slot::Udp(UdpState::new())
                };
                self.slots.insert(stream, slot);
                // If the opener is gone its guard releases the stream (and resets it).
                let _ = reply.send(OpenReply::Opened(local));
                Ok(())
            }
            // The answer to a route query: the exchange ends with it.
            Some(Slot::Routing { reply }) => {
                let _ = reply.send(OpenReply::Opened(local));
                Ok(())
            }
            other => self.unexpected(stream, other, "Opened"),
        }
    }

    /// `OpenFailed`: an open we asked for failed with this errno.
    pub(super) fn on_open_failed(
        &mut self,
        stream: StreamId,
        errno: i32,
    ) -> Result<(), CloseReason> {
        match self.slots.remove(&stream) {
            Some(Slot::Opening { reply, .. } | Slot::Routing { reply }) => {
                let _ = reply.send(OpenReply::Failed(errno));
                Ok(())
            }
            other => self.unexpected(stream, other, "OpenFailed"),
        }
    }
}
