//! A UDP flow's datagrams from the peer, queued for our user up to the flow's byte limit;
//! past it they are dropped, as a socket's receive buffer would.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::frame::StreamId;
use crate::session::state::{wake, Slot, State};
use crate::session::CloseReason;

impl State {
    /// `Datagram`: one datagram for a flow, with the address it came from.
    pub(super) fn on_datagram(
        &mut self,
        stream: StreamId,
        addr: SocketAddr,
        payload: Bytes,
    ) -> Result<(), CloseReason> {
        let cap = self.limits.udp_queue_bytes;
        let u = match self.slots.get_mut(&stream) {
            Some(Slot::Udp(u)) => u,
            other => {
                let wrong_kind = other.is_some();
                return self.stale(stream, wrong_kind, "Datagram");
            }
        };
        if u.reset.is_some() {
            return Ok(());
        }
        if u.queued_bytes + payload.len() > cap {
            // UDP may drop; a flow whose reader lags never holds up others.
            u.dropped += 1;
        } else {
            u.queued_bytes += payload.len();
            u.queue.push_back((addr, payload));
            wake(&mut u.recv_waker);
        }
        Ok(())
    }
}
