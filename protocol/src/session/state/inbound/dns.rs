//! DNS exchanges: the peer's `DnsQuery` becomes a request for our user; `DnsAnswer` and
//! `DnsFailed` answer the queries we sent.

use std::sync::Arc;

use bytes::Bytes;

use crate::frame::{DnsFailureKind, DnsTransport, StreamId};
use crate::request::{OfferKind, Request};
use crate::session::state::{DnsReply, Shared, Slot, State};
use crate::session::CloseReason;

impl State {
    /// `DnsQuery`: the peer asks us to answer a query (DNS wire format).
    pub(super) fn on_dns_query(
        &mut self,
        shared: &Arc<Shared>,
        stream: StreamId,
        transport: DnsTransport,
        message: Bytes,
    ) -> Result<Option<Request>, CloseReason> {
        let cancel = self.offer(stream, OfferKind::Dns)?;
        Ok(cancel.map(|cancel| Request::dns(shared.clone(), stream, transport, message, cancel)))
    }

    /// `DnsAnswer`: the answer to a query we sent.
    pub(super) fn on_dns_answer(
        &mut self,
        stream: StreamId,
        message: Bytes,
    ) -> Result<(), CloseReason> {
        match self.slots.remove(&stream) {
            Some(Slot::Querying { reply }) => {
                let _ = reply.send(DnsReply::Answer(message));
                Ok(())
            }
            other => self.unexpected(stream, other, "DnsAnswer"),
        }
    }

    /// `DnsFailed`: a query we sent got no answer, and why.
    pub(super) fn on_dns_failed(
        &mut self,
        stream: StreamId,
        kind: DnsFailureKind,
        message: String,
    ) -> Result<(), CloseReason> {
        match self.slots.remove(&stream) {
            Some(Slot::Querying { reply }) => {
                let _ = reply.send(DnsReply::Failed(kind, message));
                Ok(())
            }
            other => self.unexpected(stream, other, "DnsFailed"),
        }
    }
}
