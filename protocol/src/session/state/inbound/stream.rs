//! A TCP-like stream's bytes and flow control: `Data` within the credit we granted,
//! `WindowUpdate` granting us more, and `Fin` ending the peer's direction.

use bytes::Bytes;

use super::violation;
use crate::frame::StreamId;
use crate::session::state::{wake, Slot, State};
use crate::session::task::READ_CHUNK;
use crate::session::CloseReason;

/// Payloads at least this large may stay in the session's read buffer (a sixteenth of a
/// read: a queued payload keeps at most 16 times its size of that buffer alive).
const ZERO_COPY_MIN: usize = READ_CHUNK / 16;

/// A `Data` payload as the stream keeps it. It arrives as a view into the session's read
/// buffer, which it keeps alive while queued. It stays so (no copy) only when it is large
/// and its stream's reader is keeping up (`first`: nothing else queued, so it is likely
/// taken at once); otherwise it is copied out, so that a stalled stream holding small
/// pieces of many read buffers cannot keep them all alive.
fn unpinned(payload: Bytes, first: bool) -> Bytes {
    if first && payload.len() >= ZERO_COPY_MIN {
        payload
    } else {
        Bytes::copy_from_slice(&payload)
    }
}

impl State {
    /// `Data`: bytes for one of our streams, at most the credit the peer has left.
    pub(super) fn on_data(&mut self, stream: StreamId, payload: Bytes) -> Result<(), CloseReason> {
        let s = match self.slots.get_mut(&stream) {
            Some(Slot::Stream(s)) => s,
            other => {
                let wrong_kind = other.is_some();
                return self.stale(stream, wrong_kind, "Data");
            }
        };
        if s.reset.is_some() {
            // The peer reset it; data that crossed the Reset is moot.
            return Ok(());
        }
        if s.fin_received {
            return Err(violation(format!("data after FIN on stream {stream}")));
        }
        let len = payload.len() as u32;
        if len > s.recv_window {
            return Err(violation(format!(
                "stream {stream}: {len} bytes sent with only {} bytes of credit",
                s.recv_window
            )));
        }
        s.recv_window -= len;
        s.recv.push_back(unpinned(payload, s.recv.is_empty()));
        wake(&mut s.read_waker);
        Ok(())
    }

    /// `WindowUpdate`: the peer grants `increment` more bytes on a stream (2^31 in all at
    /// most).
    pub(super) fn on_window_update(
        &mut self,
        stream: StreamId,
        increment: u32,
    ) -> Result<(), CloseReason> {
        let s = match self.slots.get_mut(&stream) {
            Some(Slot::Stream(s)) => s,
            other => {
                let wrong_kind = other.is_some();
                return self.stale(stream, wrong_kind, "WindowUpdate");
            }
        };
        let credit = u64::from(s.send_credit) + u64::from(increment);
        if credit > u64::from(i32::MAX as u32) {
            return Err(violation(format!(
                "stream {stream}: window grew beyond 2^31 bytes"
            )));
        }
        s.send_credit = credit as u32;
        wake(&mut s.write_waker);
        Ok(())
    }

    /// `Fin`: the peer sends no more bytes on a stream.
    pub(super) fn on_fin(&mut self, stream: StreamId) -> Result<(), CloseReason> {
        match self.slots.get_mut(&stream) {
            Some(Slot::Stream(s)) => {
                s.fin_received = true;
                wake(&mut s.read_waker);
                Ok(())
            }
            other => {
                let wrong_kind = other.is_some();
                self.stale(stream, wrong_kind, "Fin")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_large_payload_of_a_reader_that_keeps_up_stays_in_the_read_buffer() {
        let read = Bytes::from(vec![7u8; 2 * ZERO_COPY_MIN]);
        let large = read.slice(..ZERO_COPY_MIN);
        let small = read.slice(..ZERO_COPY_MIN - 1);
        let kept = unpinned(large.clone(), true);
        assert_eq!(kept.as_ptr(), read.as_ptr(), "a view, not a copy");
        for (payload, first) in [(large, false), (small.clone(), true), (small, false)] {
            let copied = unpinned(payload.clone(), first);
            assert_eq!(copied, payload);
            assert_ne!(copied.as_ptr(), read.as_ptr(), "copied out");
        }
    }
}
