//! `Reset` from the peer: it ends whatever the stream id stands for — a stream or flow (its
//! user sees the errno), a subscription, or an open, query or request still waiting.

use std::collections::VecDeque;

use super::violation;
use crate::frame::{DnsFailureKind, StreamId};
use crate::incoming::SubscribeFailureKind;
use crate::session::state::{errno, wake, DnsReply, OpenReply, Slot, State};
use crate::session::CloseReason;

impl State {
    /// `Reset` with `errno` (0: none given; streams and flows then see `ECONNRESET`, a
    /// subscription ends with 0).
    pub(super) fn on_reset(&mut self, stream: StreamId, errno: i32) -> Result<(), CloseReason> {
        let raw_errno = errno;
        let errno = if errno == 0 { errno::ECONNRESET } else { errno };
        match self.slots.get_mut(&stream) {
            Some(Slot::Subscription(sub)) => {
                if sub.ended.is_none() {
                    sub.ended = Some(raw_errno);
                }
                wake(&mut sub.waker);
            }
            Some(Slot::Subscribing { .. }) => {
                if let Some(Slot::Subscribing { reply }) = self.remove(stream) {
                    let _ = reply.send(Err((
                        SubscribeFailureKind::Failed,
                        "the peer cancelled the subscription".into(),
                    )));
                }
            }
            Some(Slot::Stream(s)) => {
                s.reset = Some(errno);
                // Like TCP after RST: unread data is gone.
                s.recv = VecDeque::new();
                wake(&mut s.read_waker);
                wake(&mut s.write_waker);
            }
            Some(Slot::Udp(u)) => {
                u.reset = Some(errno);
                u.queue = VecDeque::new();
                u.queued_bytes = 0;
                wake(&mut u.recv_waker);
                wake(&mut u.send_waker);
            }
            Some(Slot::Offered { .. }) => {
                // The peer gave up before we answered; dropping the slot tells our user.
                self.remove(stream);
            }
            Some(Slot::Opening { .. } | Slot::Routing { .. }) => {
                if let Some(Slot::Opening { reply, .. } | Slot::Routing { reply }) =
                    self.remove(stream)
                {
                    let _ = reply.send(OpenReply::Failed(errno));
                }
            }
            Some(Slot::Resolving { .. }) => {
                // The peer gave up: no configuration (the defaults) is the answer.
                if let Some(Slot::Resolving { reply }) = self.remove(stream) {
                    let _ = reply.send(String::new());
                }
            }
            Some(Slot::Querying { .. }) => {
                if let Some(Slot::Querying { reply }) = self.remove(stream) {
                    let _ = reply.send(DnsReply::Failed(
                        DnsFailureKind::Unavailable,
                        "the peer cancelled the query".into(),
                    ));
                }
            }
            Some(Slot::Environment { .. }) => {
                if let Some(Slot::Environment { reply, .. }) = self.remove(stream) {
                    let _ = reply.send(Err("the peer cancelled the request".into()));
                }
            }
            None => {
                if !self.existed(stream) {
                    return Err(violation(format!(
                        "Reset for stream {stream}, which was never opened"
                    )));
                }
            }
        }
        Ok(())
    }
}
